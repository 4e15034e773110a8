//! Server-side dry run, protobuf request bodies, one storage for both Event APIs and
//! exact-revision lists, with real clients (kube-rs, kubectl 1.27/1.33/1.37, raw HTTP)
//! against `rudder server`.

mod common;

use std::sync::Arc;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Event as CoreEvent, Service},
    events::v1::Event as NewEvent,
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, VersionMatch},
};
use rudder_control::store::Store;
use serde_json::json;

fn service(name: &str, ty: &str, cluster_ip: Option<&str>, node_port: Option<u16>) -> Service {
    let mut port = json!({"port": 80, "targetPort": 8080});
    if let Some(n) = node_port {
        port["nodePort"] = json!(n);
    }
    let mut spec = json!({"type": ty, "selector": {"app": name}, "ports": [port]});
    if let Some(ip) = cluster_ip {
        spec["clusterIP"] = json!(ip);
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("service")
}

async fn revision(store: &Arc<dyn Store>) -> i64 {
    store.current_revision().await.expect("current revision")
}

/// Sends a raw request; (status, body).
async fn raw(
    client: &kube::Client,
    method: &str,
    uri: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("Content-Type", content_type)
        .body(kube::client::Body::from(body.to_vec()))
        .expect("request");
    let resp = client.send(req).await.expect("send");
    let status = resp.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_dry_runs_persist_nothing_and_allocate_nothing() {
    let (dir, store) = common::TestServer::embedded_store().await;
    let server = common::TestServer::start_with(dir, Arc::clone(&store)).await;
    let client = server.client().await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };

    let before = revision(&store).await;
    let tried = services
        .create(&dry, &service("web", "NodePort", None, None))
        .await
        .expect("dry-run create of a NodePort Service");
    let spec = tried.spec.clone().expect("spec");
    let ip = spec
        .cluster_ip
        .clone()
        .expect("a dry run still shows the ClusterIP it would get");
    let node_port = spec.ports.as_ref().expect("ports")[0]
        .node_port
        .expect("and the NodePort");
    assert!(tried.metadata.uid.is_some(), "defaulting ran: {:?}", tried.metadata);
    assert_eq!(tried.metadata.resource_version, None, "no revision was consumed");
    assert_eq!(revision(&store).await, before, "the store did not change");
    assert!(
        services.get_opt("web").await.expect("get").is_none(),
        "nothing was stored"
    );

    // The address and port were not taken: a real Service can have exactly them.
    let real = services
        .create(
            &PostParams::default(),
            &service("other", "NodePort", Some(&ip), Some(node_port as u16)),
        )
        .await
        .expect("the dry run's ClusterIP and NodePort are still free");
    assert_eq!(real.spec.expect("spec").cluster_ip.as_deref(), Some(ip.as_str()));

    // Validation and admission run: an invalid object is refused just the same.
    let bad = services
        .create(&dry, &service("bad", "ClusterIP", Some("10.0.0.1"), None))
        .await
        .expect_err("a ClusterIP outside the range is invalid in a dry run too");
    assert!(matches!(bad, kube::Error::Api(ref s) if s.code == 422), "{bad:?}");
    let clash = services
        .create(&dry, &service("other", "ClusterIP", None, None))
        .await
        .expect_err("an existing name is a conflict in a dry run too");
    assert!(matches!(clash, kube::Error::Api(ref s) if s.code == 409), "{clash:?}");

    // Update, patch and delete: the reply is what would be stored, the store keeps the old.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"a": "1"}})).expect("configmap");
    let cm = cms.create(&PostParams::default(), &cm).await.expect("create");
    let rv = cm.metadata.resource_version.clone().expect("rv");
    let before = revision(&store).await;
    let mut changed = cm.clone();
    changed.data = Some([("a".to_owned(), "2".to_owned())].into());
    let replaced = cms.replace("cfg", &dry, &changed).await.expect("dry-run update");
    assert_eq!(replaced.data.expect("data")["a"], "2");
    assert_eq!(replaced.metadata.resource_version.as_deref(), Some(rv.as_str()));
    let patched = cms
        .patch(
            "cfg",
            &PatchParams {
                dry_run: true,
                ..Default::default()
            },
            &Patch::Merge(json!({"data": {"b": "3"}})),
        )
        .await
        .expect("dry-run patch");
    assert_eq!(patched.data.expect("data").get("b").map(String::as_str), Some("3"));
    cms.delete("cfg", &DeleteParams::default().dry_run())
        .await
        .expect("dry-run delete");
    assert_eq!(revision(&store).await, before, "no write reached the store");
    let kept = cms.get("cfg").await.expect("the ConfigMap is still there");
    assert_eq!(kept.data.expect("data"), [("a".to_owned(), "1".to_owned())].into());
    assert_eq!(kept.metadata.resource_version.as_deref(), Some(rv.as_str()));

    // A dry-run scale of a Deployment changes nothing either.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "d"}, "spec": {"replicas": 1,
        "selector": {"matchLabels": {"app": "d"}}, "template": {"metadata": {"labels": {"app": "d"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}))
    .expect("deployment");
    deployments
        .create(&PostParams::default(), &d)
        .await
        .expect("create deployment");
    let before = revision(&store).await;
    let scale = deployments
        .patch_scale(
            "d",
            &PatchParams {
                dry_run: true,
                ..Default::default()
            },
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .expect("dry-run scale");
    assert_eq!(scale.spec.expect("spec").replicas, Some(5));
    assert_eq!(revision(&store).await, before);
    assert_eq!(
        deployments.get("d").await.expect("get").spec.expect("spec").replicas,
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_http_bad_dry_run_values_and_malformed_delete_options() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let (code, status) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/configmaps?dryRun=Yes",
        "application/json",
        br#"{"metadata":{"name":"x"}}"#,
    )
    .await;
    // Upstream's ValidateCreateOptions: 422 Invalid on CreateOptions, naming dryRun.
    assert_eq!(code, 422, "{status}");
    assert_eq!(status["details"]["causes"][0]["field"], "dryRun", "{status}");
    assert!(
        status["message"].as_str().unwrap_or_default().contains("Yes"),
        "{status}"
    );

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "keep"}})).expect("configmap");
    cms.create(&PostParams::default(), &cm).await.expect("create");
    for body in [&b"{not json"[..], br#"{"gracePeriodSeconds":"soon"}"#, br#"[1]"#] {
        let (code, status) = raw(
            &client,
            "DELETE",
            "/api/v1/namespaces/default/configmaps/keep",
            "application/json",
            body,
        )
        .await;
        assert_eq!(code, 400, "{}: {status}", String::from_utf8_lossy(body));
        assert_eq!(status["reason"], "BadRequest");
    }
    let (code, status) = raw(
        &client,
        "DELETE",
        "/api/v1/namespaces/default/configmaps/keep",
        "application/json",
        br#"{"dryRun":["Maybe"]}"#,
    )
    .await;
    assert_eq!(code, 422, "{status}");
    assert!(
        cms.get_opt("keep").await.expect("get").is_some(),
        "a refused delete deletes nothing"
    );
    let (code, _) = raw(
        &client,
        "DELETE",
        "/api/v1/namespaces/default/configmaps/keep",
        "application/json",
        br#"{"dryRun":["All"]}"#,
    )
    .await;
    assert_eq!(code, 200);
    assert!(
        cms.get_opt("keep").await.expect("get").is_some(),
        "dryRun in the body is honoured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_one_storage_through_both_apis() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
    let new: Api<NewEvent> = Api::namespaced(client.clone(), "default");
    let e: CoreEvent = serde_json::from_value(json!({
        "metadata": {"name": "old-style"},
        "involvedObject": {"kind": "Pod", "name": "p1", "namespace": "default"},
        "reason": "Pulled", "message": "image pulled", "type": "Normal", "count": 3,
        "source": {"component": "kubelet", "host": "n1"},
        "reportingComponent": "kubelet", "reportingInstance": "n1",
        "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:01:00Z"
    }))
    .expect("core event");
    core.create(&PostParams::default(), &e)
        .await
        .expect("create through core/v1");
    let seen = new.get("old-style").await.expect("readable through events.k8s.io/v1");
    assert_eq!(seen.note.as_deref(), Some("image pulled"));
    assert_eq!(seen.reporting_controller.as_deref(), Some("kubelet"));
    assert_eq!(seen.deprecated_count, Some(3));
    assert_eq!(seen.regarding.expect("regarding").name.as_deref(), Some("p1"));
    assert_eq!(seen.deprecated_source.expect("source").host.as_deref(), Some("n1"));
    assert!(seen.deprecated_first_timestamp.is_some());

    let e: NewEvent = serde_json::from_value(json!({
        "metadata": {"name": "new-style"},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "regarding": {"kind": "Node", "name": "n2"},
        "reason": "Started", "note": "it started", "type": "Normal", "action": "Start",
        "reportingController": "example.com/ctl", "reportingInstance": "ctl-1"
    }))
    .expect("events.k8s.io event");
    new.create(&PostParams::default(), &e)
        .await
        .expect("create through events.k8s.io/v1");
    let seen = core.get("new-style").await.expect("readable through core/v1");
    assert_eq!(seen.message.as_deref(), Some("it started"));
    assert_eq!(seen.reporting_component.as_deref(), Some("example.com/ctl"));
    assert_eq!(seen.involved_object.name.as_deref(), Some("n2"));
    let names = |l: Vec<Option<String>>| {
        let mut l = l.into_iter().flatten().collect::<Vec<_>>();
        l.sort();
        l
    };
    let via_core = core.list(&ListParams::default()).await.expect("list core");
    let via_new = new.list(&ListParams::default()).await.expect("list events.k8s.io");
    assert_eq!(
        names(via_core.items.into_iter().map(|e| e.metadata.name).collect()),
        ["new-style", "old-style"]
    );
    assert_eq!(
        names(via_new.items.into_iter().map(|e| e.metadata.name).collect()),
        ["new-style", "old-style"]
    );
    new.delete("old-style", &DeleteParams::default())
        .await
        .expect("delete through the other API");
    assert!(core.get_opt("old-style").await.expect("get").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_resource_version_lists_read_the_past_until_compacted() {
    let (dir, store) = common::TestServer::embedded_store().await;
    let server = common::TestServer::start_with(dir, Arc::clone(&store)).await;
    let client = server.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "v"}, "data": {"gen": "1"}})).expect("configmap");
    let first = cms.create(&PostParams::default(), &cm).await.expect("create");
    let rv1 = first.metadata.resource_version.clone().expect("rv");
    cms.patch(
        "v",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"gen": "2"}})),
    )
    .await
    .expect("patch");
    let now = cms.list(&ListParams::default()).await.expect("list");
    assert_eq!(now.items[0].data.as_ref().expect("data")["gen"], "2");
    let then = cms
        .list(&ListParams::default().at(&rv1).matching(VersionMatch::Exact))
        .await
        .expect("list at the exact past revision");
    assert_eq!(then.items[0].data.as_ref().expect("data")["gen"], "1");
    assert_eq!(then.metadata.resource_version.as_deref(), Some(rv1.as_str()));

    let current = revision(&store).await;
    store.compact(current).await.expect("compact");
    let err = cms
        .list(&ListParams::default().at(&rv1).matching(VersionMatch::Exact))
        .await
        .expect_err("compacted history is gone");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 410 && s.reason == "Expired"),
        "{err:?}"
    );

    for query in [
        "resourceVersionMatch=Exact",
        "resourceVersion=0&resourceVersionMatch=Exact",
        "resourceVersion=5&resourceVersionMatch=Sometime",
    ] {
        let (code, status) = raw(
            &client,
            "GET",
            &format!("/api/v1/namespaces/default/configmaps?{query}"),
            "application/json",
            b"",
        )
        .await;
        assert_eq!(code, 422, "{query}: {status}");
        assert_eq!(status["details"]["causes"][0]["field"], "resourceVersionMatch");
    }
}

/// `--dry-run=server` and the protobuf bodies of `kubectl create ...`, with each kubectl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_dry_run_and_protobuf_creates() {
    let server = common::TestServer::start().await;
    let kubeconfig = server.kubeconfig();
    let dir = server.dir.path().to_path_buf();
    let report = tokio::task::spawn_blocking(move || {
        let failures = std::cell::RefCell::new(Vec::new());
        for minor in [27, 33, 37] {
            let cache = dir.join(format!("cache-{minor}"));
            let run = |args: &[&str]| common::run_kubectl(minor, &kubeconfig, &cache, args);
            let ns = format!("dr{minor}");
            let check = |what: &str, (ok, out, err): (bool, String, String), want_ok: bool| {
                if ok != want_ok {
                    failures.borrow_mut().push(format!("kubectl 1.{minor} {what}: ok={ok}\n{out}\n{err}"));
                }
                out
            };
            check("create namespace", run(&["create", "namespace", &ns]), true);
            let out = check(
                "create deployment --dry-run=server",
                run(&["-n", &ns, "create", "deployment", "x", "--image=busybox", "--dry-run=server", "-o", "yaml"]),
                true,
            );
            if !out.contains("name: x") || !out.contains("image: busybox") {
                failures.borrow_mut().push(format!("kubectl 1.{minor}: dry-run output lacks the object:\n{out}"));
            }
            check("get the dry-run deployment", run(&["-n", &ns, "get", "deployment", "x"]), false);

            let manifest = dir.join(format!("cm-{minor}.yaml"));
            std::fs::write(&manifest, format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: applied, namespace: {ns}}}\ndata: {{a: b}}\n"))
                .expect("manifest");
            let manifest = manifest.to_string_lossy().into_owned();
            check("apply --dry-run=server", run(&["apply", "--dry-run=server", "-f", &manifest]), true);
            check("get the dry-run apply", run(&["-n", &ns, "get", "configmap", "applied"]), false);

            // The typed `create` subcommands POST protobuf from 1.32 on.
            for args in [
                vec!["create", "deployment", "web", "--image=busybox", "--port=8080"],
                vec!["create", "service", "clusterip", "web", "--tcp=80:8080"],
                vec!["create", "service", "nodeport", "np", "--tcp=80:8080"],
                vec!["create", "service", "externalname", "ext", "--external-name=example.com"],
                vec!["create", "configmap", "cm", "--from-literal=a=b"],
                vec!["create", "secret", "generic", "sec", "--from-literal=a=b"],
                vec!["create", "serviceaccount", "sa"],
                vec!["create", "role", "r", "--verb=get", "--resource=pods"],
                vec!["create", "rolebinding", "rb", "--role=r", "--user=u"],
            ] {
                let mut full = vec!["-n", ns.as_str()];
                full.extend(&args);
                check(&args.join(" "), run(&full), true);
            }
            let cr = format!("cr-{minor}");
            check("create clusterrole", run(&["create", "clusterrole", &cr, "--verb=get", "--resource=pods"]), true);
            check(
                "create clusterrolebinding",
                run(&["create", "clusterrolebinding", &cr, &format!("--clusterrole={cr}"), "--user=u"]),
                true,
            );
            let out = check(
                "get the created service",
                run(&["-n", &ns, "get", "service", "np", "-o", "jsonpath={.spec.type} {.spec.ports[0].targetPort} {.spec.ports[0].nodePort}"]),
                true,
            );
            if !out.starts_with("NodePort 8080 3") {
                failures.borrow_mut().push(format!("kubectl 1.{minor}: the NodePort Service came out as {out:?}"));
            }
            let out = check(
                "get the created deployment",
                run(&["-n", &ns, "get", "deployment", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort} {.spec.selector.matchLabels.app}"]),
                true,
            );
            if out != "busybox 8080 web" {
                failures.borrow_mut().push(format!("kubectl 1.{minor}: the Deployment came out as {out:?}"));
            }
            let out = check(
                "get the created secret",
                run(&["-n", &ns, "get", "secret", "sec", "-o", "jsonpath={.data.a}"]),
                true,
            );
            if out != "Yg==" {
                failures.borrow_mut().push(format!("kubectl 1.{minor}: the Secret's data came out as {out:?}"));
            }

            check("delete --dry-run=server", run(&["-n", &ns, "delete", "configmap", "cm", "--dry-run=server"]), true);
            check("get after the dry-run delete", run(&["-n", &ns, "get", "configmap", "cm"]), true);
        }
        failures.into_inner()
    })
    .await
    .expect("kubectl runs");
    assert!(report.is_empty(), "{}", report.join("\n---\n"));
}
