//! Discovery (legacy and aggregated), metadata-only responses and Tables, through real
//! clients: kube-rs (its discovery both ways, `get_metadata`, `list_metadata`,
//! `metadata_watcher`, raw requests for the headers) and kubectl 1.27, 1.33 and 1.37.

mod common;

use std::{collections::BTreeSet, time::Duration};

use futures::StreamExt;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    core::PartialObjectMeta,
    discovery::{Discovery, Scope},
    runtime::watcher,
};
use serde_json::{Value, json};

const AGGREGATED_V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
const AGGREGATED_V2BETA1: &str = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";

/// GET `path` with `accept`: (status, Content-Type, body as JSON).
async fn raw_get(client: &Client, path: &str, accept: &str) -> (u16, String, Value) {
    let req = http::Request::get(path)
        .header(http::header::ACCEPT, accept)
        .body(Vec::new())
        .expect("request");
    let resp = client.send(req.map(kube::client::Body::from)).await.expect("send");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{path} with {accept}: body is not JSON ({e}): {bytes:?}"));
    (status, content_type, body)
}

/// Every resource a discovery run found: (group, version, plural, kind, namespaced, subresources).
fn served(d: &Discovery) -> BTreeSet<(String, String, String, String, bool, Vec<String>)> {
    let mut out = BTreeSet::new();
    for g in d.groups() {
        for (ar, caps) in g.recommended_resources() {
            let mut subs: Vec<String> = caps.subresources.iter().map(|(s, _)| s.plural.clone()).collect();
            subs.sort();
            out.insert((
                ar.group,
                ar.version,
                ar.plural,
                ar.kind,
                caps.scope == Scope::Namespaced,
                subs,
            ));
        }
    }
    out
}

async fn namespace(client: &Client, name: &str) {
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace"),
    )
    .await
    .expect("create namespace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_discovery_legacy_and_aggregated_agree() {
    let server = common::TestServer::start().await;
    let client = server.client().await;

    let legacy = Discovery::new(client.clone()).run().await.expect("legacy discovery");
    let aggregated = Discovery::new(client.clone())
        .run_aggregated()
        .await
        .expect("aggregated discovery");
    let (legacy, aggregated) = (served(&legacy), served(&aggregated));
    assert_eq!(
        legacy, aggregated,
        "aggregated discovery must list what the legacy documents list"
    );
    let has = |group: &str, plural: &str, kind: &str, namespaced: bool| {
        aggregated
            .iter()
            .any(|(g, _, p, k, n, _)| g == group && p == plural && k == kind && *n == namespaced)
    };
    assert!(
        has("", "pods", "Pod", true),
        "core group missing from aggregated discovery"
    );
    assert!(has("", "nodes", "Node", false));
    assert!(has("apps", "deployments", "Deployment", true));
    assert!(has("apiregistration.k8s.io", "apiservices", "APIService", false));
    let pods = aggregated
        .iter()
        .find(|r| r.0.is_empty() && r.2 == "pods")
        .expect("pods");
    assert_eq!(
        pods.5,
        ["attach", "binding", "eviction", "exec", "log", "portforward", "status"]
    );

    // The wire forms: v2 and v2beta1 by Accept, with the Content-Type client-go checks, and
    // the legacy documents for a client that does not ask.
    for (path, first) in [("/apis", "apps"), ("/api", "")] {
        let (code, ct, body) = raw_get(&client, path, &format!("{AGGREGATED_V2},application/json")).await;
        assert_eq!((code, ct.as_str()), (200, AGGREGATED_V2), "{path}");
        assert_eq!(body["kind"], "APIGroupDiscoveryList");
        assert_eq!(body["apiVersion"], "apidiscovery.k8s.io/v2");
        let names: Vec<&str> = body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|g| g["metadata"]["name"].as_str().unwrap_or_default())
            .collect();
        assert!(names.contains(&first), "{path}: {names:?}");
        let version = &body["items"][0]["versions"][0];
        assert_eq!(version["freshness"], "Current", "{path}");

        let (code, ct, body) = raw_get(&client, path, &format!("{AGGREGATED_V2BETA1},application/json")).await;
        assert_eq!((code, ct.as_str()), (200, AGGREGATED_V2BETA1), "{path}");
        assert_eq!(body["apiVersion"], "apidiscovery.k8s.io/v2beta1");

        let (code, ct, body) = raw_get(&client, path, "application/json").await;
        assert_eq!((code, ct.as_str()), (200, "application/json"), "{path}");
        let legacy_kind = if path == "/api" { "APIVersions" } else { "APIGroupList" };
        assert_eq!(body["kind"], legacy_kind, "{path}");
    }
    let (_, _, apis) = raw_get(&client, "/apis", AGGREGATED_V2).await;
    let apps = apis["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|g| g["metadata"]["name"] == "apps")
        .expect("apps");
    let deployments = apps["versions"][0]["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["resource"] == "deployments")
        .expect("deployments");
    assert_eq!(deployments["scope"], "Namespaced");
    assert_eq!(deployments["singularResource"], "deployment");
    assert_eq!(deployments["shortNames"], json!(["deploy"]));
    assert_eq!(deployments["categories"], json!(["all"]));
    let scale = deployments["subresources"]
        .as_array()
        .expect("subresources")
        .iter()
        .find(|s| s["subresource"] == "scale")
        .expect("scale");
    assert_eq!(
        scale["responseKind"],
        json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
    );
    println!(
        "kube-rs: legacy and aggregated discovery agree on {} resources; v2, v2beta1 and legacy by Accept",
        aggregated.len()
    );
}

/// What a metadata watch event told: the object's kind on the wire, its labels, and whether
/// it was a delete. None for the watcher's Init/InitDone markers.
struct MetaEvent {
    kind: Option<String>,
    labels: std::collections::BTreeMap<String, String>,
    is_delete: bool,
}

type MetaEvents = tokio::sync::mpsc::UnboundedReceiver<Result<Option<MetaEvent>, String>>;

/// Drains a metadata watch stream into a channel the test reads with timeouts.
fn forward<K: Send + 'static>(
    stream: impl futures::Stream<Item = Result<watcher::Event<PartialObjectMeta<K>>, watcher::Error>> + Send + 'static,
) -> MetaEvents {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let ev = ev.map_err(|e| e.to_string()).map(|ev| {
                let (obj, is_delete) = match ev {
                    watcher::Event::Apply(o) | watcher::Event::InitApply(o) => (o, false),
                    watcher::Event::Delete(o) => (o, true),
                    watcher::Event::Init | watcher::Event::InitDone => return None,
                };
                Some(MetaEvent {
                    kind: obj.types.map(|t| t.kind),
                    labels: obj.metadata.labels.unwrap_or_default(),
                    is_delete,
                })
            });
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_metadata_get_list_and_watch() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    namespace(&client, "meta").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "meta");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "meta");

    // Watches first, so they see the adds: kube-rs' `metadata_watcher` on ConfigMaps, and its
    // successor (a watcher on `Api<PartialObjectMeta<Pod>>`) on Pods; both ask for
    // PartialObjectMetadata.
    #[allow(deprecated, reason = "metadata_watcher is what many controllers still call")]
    let cm_events = kube::runtime::metadata_watcher(cms.clone(), watcher::Config::default());
    let mut cm_rx = forward(cm_events);
    let pod_meta: Api<PartialObjectMeta<Pod>> = Api::namespaced(client.clone(), "meta");
    let mut pod_rx = forward(watcher(pod_meta, watcher::Config::default()));

    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "settings", "labels": {"app": "a"}}, "data": {"secret-ish": "payload"}}),
    )
    .expect("configmap");
    cms.create(&PostParams::default(), &cm).await.expect("create configmap");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "labels": {"app": "a"}},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod).await.expect("create pod");

    // get_metadata: the kind is PartialObjectMetadata, the body has metadata only.
    let m = cms.get_metadata("settings").await.expect("get_metadata");
    let types = m.types.clone().expect("typed");
    assert_eq!(
        (types.kind.as_str(), types.api_version.as_str()),
        ("PartialObjectMetadata", "meta.k8s.io/v1")
    );
    assert_eq!(m.metadata.name.as_deref(), Some("settings"));
    assert_eq!(
        m.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app"))
            .map(String::as_str),
        Some("a")
    );
    assert!(m.metadata.uid.is_some() && m.metadata.resource_version.is_some());
    let (code, ct, raw) = raw_get(
        &client,
        "/api/v1/namespaces/meta/configmaps/settings",
        "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(ct, "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1");
    assert!(raw.get("data").is_none(), "metadata-only get carried data: {raw}");
    let pm = pods.get_metadata("web").await.expect("pod get_metadata");
    assert_eq!(pm.types.expect("typed").kind, "PartialObjectMetadata");

    // list_metadata, with a selector.
    let list = pods
        .list_metadata(&ListParams::default().labels("app=a"))
        .await
        .expect("list_metadata");
    let names: Vec<_> = list.items.iter().filter_map(|p| p.metadata.name.clone()).collect();
    assert_eq!(names, ["web"]);
    assert!(list.metadata.resource_version.is_some());
    let (code, ct, raw) = raw_get(
        &client,
        "/api/v1/namespaces/meta/pods",
        "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
    )
    .await;
    assert_eq!((code, raw["kind"].as_str()), (200, Some("PartialObjectMetadataList")));
    assert_eq!(ct, "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1");
    assert!(raw["items"][0].get("spec").is_none(), "{raw}");
    // A list cannot be answered as a single PartialObjectMetadata: 406, as upstream.
    let (code, _, raw) = raw_get(
        &client,
        "/api/v1/namespaces/meta/pods",
        "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
    )
    .await;
    assert_eq!((code, raw["reason"].as_str()), (406, Some("NotAcceptable")));

    // Modify both, then delete both: each watcher sees add, modify and delete.
    let relabel = Patch::Merge(json!({"metadata": {"labels": {"stage": "two"}}}));
    cms.patch("settings", &PatchParams::default(), &relabel)
        .await
        .expect("patch cm");
    pods.patch("web", &PatchParams::default(), &relabel)
        .await
        .expect("patch pod");
    cms.delete("settings", &DeleteParams::default())
        .await
        .expect("delete cm");
    pods.delete("web", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");

    for (what, rx) in [("configmap", &mut cm_rx), ("pod", &mut pod_rx)] {
        let (mut added, mut modified, mut deleted) = (false, false, false);
        while !(added && modified && deleted) {
            let ev = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .unwrap_or_else(|_| panic!("{what}: added {added} modified {modified} deleted {deleted} after 30 s"))
                .expect("watcher ended")
                .unwrap_or_else(|e| panic!("{what} metadata watcher failed: {e}"));
            let Some(MetaEvent {
                kind,
                labels,
                is_delete,
            }) = ev
            else {
                continue;
            };
            assert_eq!(
                kind.as_deref(),
                Some("PartialObjectMetadata"),
                "{what}: watch events carry PartialObjectMetadata"
            );
            if is_delete {
                deleted = true;
            } else if labels.get("stage").map(String::as_str) == Some("two") {
                modified = true;
            } else if labels.get("app").map(String::as_str) == Some("a") {
                added = true;
            }
        }
    }
    println!("kube-rs: get_metadata, list_metadata and metadata_watcher (add/modify/delete) on ConfigMaps and Pods");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_for_every_resource_with_include_object() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    namespace(&client, "tables").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "tables");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"a": "1"}})).expect("cm"),
    )
    .await
    .expect("create");
    let table = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    let path = "/api/v1/namespaces/tables/configmaps";
    let (code, ct, t) = raw_get(&client, &format!("{path}?includeObject=None"), table).await;
    assert_eq!(
        (code, ct.as_str()),
        (200, "application/json;as=Table;g=meta.k8s.io;v=v1")
    );
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["rows"][0]["cells"], json!(["c", 1, t["rows"][0]["cells"][2]]));
    assert!(t["rows"][0].get("object").is_none());
    let (_, _, t) = raw_get(&client, &format!("{path}?includeObject=Object"), table).await;
    assert_eq!(t["rows"][0]["object"]["kind"], "ConfigMap");
    assert_eq!(t["rows"][0]["object"]["data"]["a"], "1");
    let (_, _, t) = raw_get(&client, path, "application/json;as=Table;v=v1beta1;g=meta.k8s.io").await;
    assert_eq!(t["apiVersion"], "meta.k8s.io/v1beta1");
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    let (code, _, _) = raw_get(&client, &format!("{path}?includeObject=All"), table).await;
    assert_eq!(code, 400);

    // Every type in discovery answers a Table list with a Name column.
    let discovery = Discovery::new(client.clone()).run().await.expect("discovery");
    let mut checked = 0;
    for g in discovery.groups() {
        for (ar, caps) in g.recommended_resources() {
            if !caps.supports_operation(kube::discovery::verbs::LIST) {
                continue;
            }
            let prefix = if ar.group.is_empty() {
                "/api".to_owned()
            } else {
                format!("/apis/{}", ar.group)
            };
            let (code, _, t) = raw_get(&client, &format!("{prefix}/{}/{}", ar.version, ar.plural), table).await;
            assert_eq!((code, t["kind"].as_str()), (200, Some("Table")), "{}: {t}", ar.plural);
            let cols: Vec<&str> = t["columnDefinitions"]
                .as_array()
                .expect("columns")
                .iter()
                .filter_map(|c| c["name"].as_str())
                .collect();
            assert!(cols.contains(&"Name"), "{}: {cols:?}", ar.plural);
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} types listed");
    println!("Tables: includeObject None/Object/Metadata, v1 and v1beta1, {checked} types as Tables");
}

/// `kubectl api-resources` and `kubectl get` across three kubectl versions. kubectl 1.27
/// asks for aggregated discovery v2beta1, the later ones v2; `-v=6` logs every request, so
/// a per-group-version GET (legacy discovery) would show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_api_resources_and_tables() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    namespace(&client, "kt").await;
    let kubeconfig = server.kubeconfig();
    let dir = server.dir.path().to_path_buf();
    let report = tokio::task::spawn_blocking(move || {
        let manifest = dir.join("objects.yaml");
        std::fs::write(
            &manifest,
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: kt}
data: {a: "1", b: "2"}
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: kt}
type: Opaque
stringData: {user: admin}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: robot, namespace: kt}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader, namespace: kt}
rules: [{apiGroups: [""], resources: [pods], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader, namespace: kt}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}
subjects: [{kind: ServiceAccount, name: robot, namespace: kt}]
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: leader, namespace: kt}
spec: {holderIdentity: node-a}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: kt}
spec:
  containers: [{name: web, image: "nginx:1.27"}]
"#,
        )
        .expect("manifest");
        let mut lines = Vec::new();
        for minor in [27, 33, 37] {
            let cache = dir.join(format!("cache-{minor}"));
            let run = |args: &[&str]| common::run_kubectl(minor, &kubeconfig, &cache, args);
            let (ok, out, err) = run(&["api-resources", "-v=6"]);
            assert!(ok, "kubectl 1.{minor} api-resources: {err}");
            let per_group: Vec<&str> = err
                .lines()
                .filter(|l| l.contains("GET") && (l.contains("/apis/apps/v1?") || l.contains("/api/v1?")))
                .collect();
            assert!(
                per_group.is_empty(),
                "kubectl 1.{minor} fell back to legacy discovery: {per_group:?}"
            );
            let row = |name: &str| -> Vec<String> {
                out.lines()
                    .find(|l| l.split_whitespace().next() == Some(name))
                    .unwrap_or_else(|| panic!("kubectl 1.{minor} api-resources lacks {name}:\n{out}"))
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            };
            assert_eq!(row("pods"), ["pods", "po", "v1", "true", "Pod"], "1.{minor}");
            assert_eq!(row("nodes"), ["nodes", "no", "v1", "false", "Node"], "1.{minor}");
            assert_eq!(
                row("deployments"),
                ["deployments", "deploy", "apps/v1", "true", "Deployment"],
                "1.{minor}"
            );
            assert_eq!(
                row("apiservices"),
                ["apiservices", "apiregistration.k8s.io/v1", "false", "APIService"],
                "1.{minor}"
            );
            assert_eq!(
                row("leases"),
                ["leases", "coordination.k8s.io/v1", "true", "Lease"],
                "1.{minor}"
            );
            let (ok, out, err) = run(&["api-resources", "--namespaced=false", "-o", "name"]);
            assert!(
                ok && out.contains("clusterroles.rbac.authorization.k8s.io"),
                "{out}{err}"
            );
            assert!(
                !out.lines().any(|l| l == "pods"),
                "1.{minor}: pods listed as cluster-scoped"
            );

            let (ok, _, err) = run(&["apply", "-f", manifest.to_str().expect("utf-8 path")]);
            assert!(ok, "kubectl 1.{minor} apply: {err}");
            let (ok, out, err) = run(&[
                "get",
                "-n",
                "kt",
                "configmaps,secrets,serviceaccounts,leases,roles,rolebindings",
            ]);
            assert!(ok, "kubectl 1.{minor} get: {err}");
            for want in [
                "DATA",
                "TYPE",
                "SECRETS",
                "HOLDER",
                "CREATED AT",
                "ROLE",
                "configmap/settings",
                "secret/creds",
                "Opaque",
                "node-a",
                "Role/reader",
                "serviceaccount/robot",
            ] {
                assert!(out.contains(want), "kubectl 1.{minor} get lacks {want:?}:\n{out}");
            }
            let settings = out
                .lines()
                .find(|l| l.starts_with("configmap/settings"))
                .expect("settings row");
            assert_eq!(settings.split_whitespace().nth(1), Some("2"), "{settings}");
            let (ok, out, err) = run(&["get", "-n", "kt", "pods"]);
            assert!(ok, "{err}");
            let header = out.lines().next().unwrap_or_default().to_owned();
            assert!(header.contains("RESTARTS") && !header.contains("NODE"), "{out}");
            let (ok, out, err) = run(&["get", "-n", "kt", "pods", "-o", "wide"]);
            assert!(ok, "{err}");
            assert!(out.lines().next().unwrap_or_default().contains("NODE"), "{out}");
            let (ok, out, err) = run(&["get", "rolebindings", "-n", "kt", "-o", "wide"]);
            assert!(ok && out.contains("kt/robot"), "{out}{err}");
            let (ok, out, err) = run(&["get", "clusterroles"]);
            assert!(
                ok && out.contains("CREATED AT") && out.contains("cluster-admin"),
                "{out}{err}"
            );
            let (ok, out, err) = run(&["get", "apiservices"]);
            assert!(ok, "kubectl 1.{minor} get apiservices: {out}{err}");
            lines.push(format!(
                "kubectl 1.{minor}: api-resources by aggregated discovery, get tables: ok"
            ));
        }
        lines
    })
    .await
    .expect("kubectl thread");
    for l in report {
        println!("{l}");
    }
}
