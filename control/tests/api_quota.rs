//! ResourceQuota (the quota controller's status, the admission plugin's charges and
//! refusals, concurrency at the last slot, dry runs) and PodSecurity (enforce refusals,
//! warn headers, workload templates, namespace relabelling), with kube-rs and kubectl 1.33
//! and 1.37 against a real `rudder server` and the real quota controller.

mod common;

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Namespace, Pod, ResourceQuota, Service},
};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use rudder_control::controllers::resourcequota;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

async fn namespace(client: &kube::Client, name: &str, labels: Value) {
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

fn pod(name: &str, resources: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox", "resources": resources}]},
    }))
    .expect("pod")
}

async fn quota(client: &kube::Client, ns: &str, name: &str, hard: Value) {
    let q: ResourceQuota =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"hard": hard}})).expect("quota");
    Api::<ResourceQuota>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &q)
        .await
        .expect("create quota");
}

/// Waits until the quota's `status.used` has `want` (as the API prints the quantities).
async fn wait_used(client: &kube::Client, ns: &str, name: &str, want: Value) -> Value {
    let api: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
    common::wait_for(&format!("quota {ns}/{name} used {want}"), LIMIT, || {
        let api = api.clone();
        let want = want.clone();
        async move {
            let q = serde_json::to_value(api.get(name).await.ok()?).ok()?;
            let used = &q["status"]["used"];
            want.as_object()?.iter().all(|(k, v)| &used[k] == v).then_some(q)
        }
    })
    .await
}

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_controller_counts_usage_and_admission_refuses_what_exceeds_it() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let controller_client = client.clone();
    let controller = common::Background::start(move |shutdown| resourcequota::run(controller_client, shutdown));
    namespace(&client, "team", json!({})).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    // Objects that exist before the quota are counted by the controller, not admission.
    pods.create(
        &PostParams::default(),
        &pod(
            "early",
            json!({"requests": {"cpu": "250m"}, "limits": {"memory": "64Mi"}}),
        ),
    )
    .await
    .expect("pod before quota");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "cm1"}})).expect("cm");
    cms.create(&PostParams::default(), &cm).await.expect("configmap");
    quota(
        &client,
        "team",
        "objects",
        json!({"pods": "2", "configmaps": "5", "services": "3", "services.nodeports": "0", "count/deployments.apps": "4"}),
    )
    .await;
    quota(
        &client,
        "team",
        "compute",
        json!({"requests.cpu": "1", "limits.memory": "1Gi"}),
    )
    .await;
    let objects = wait_used(
        &client,
        "team",
        "objects",
        json!({"pods": "1", "configmaps": "1", "services": "0", "services.nodeports": "0", "count/deployments.apps": "0"}),
    )
    .await;
    assert_eq!(objects["status"]["hard"]["pods"], "2", "status.hard mirrors spec.hard");
    wait_used(
        &client,
        "team",
        "compute",
        json!({"requests.cpu": "250m", "limits.memory": "64Mi"}),
    )
    .await;

    // Admission charges the create at once, before the controller sees the pod.
    pods.create(
        &PostParams::default(),
        &pod("second", json!({"limits": {"cpu": "500m", "memory": "128Mi"}})),
    )
    .await
    .expect("second pod fits");
    let q = Api::<ResourceQuota>::namespaced(client.clone(), "team")
        .get("compute")
        .await
        .expect("quota");
    let used = serde_json::to_value(&q).expect("json")["status"]["used"].clone();
    assert_eq!(
        used,
        json!({"requests.cpu": "750m", "limits.memory": "192Mi"}),
        "charged at admission"
    );

    let over = pods
        .create(
            &PostParams::default(),
            &pod("third", json!({"limits": {"cpu": "100m", "memory": "1Mi"}})),
        )
        .await
        .expect_err("a third pod exceeds the pod count");
    let over = api_error(over);
    assert_eq!((over.code, over.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        over.message,
        "pods \"third\" is forbidden: exceeded quota: objects, requested: pods=1, used: pods=2, limited: pods=2"
    );
    let unstated = pods
        .create(&PostParams::default(), &pod("bare", json!({})))
        .await
        .expect_err("compute quotas need requests and limits");
    assert_eq!(
        api_error(unstated).message,
        "pods \"bare\" is forbidden: failed quota: compute: must specify limits.memory for: c; requests.cpu for: c"
    );

    // Deleting a pod gives its slot back once the controller recounts.
    pods.delete("early", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete");
    wait_used(&client, "team", "objects", json!({"pods": "1"})).await;
    wait_used(
        &client,
        "team",
        "compute",
        json!({"requests.cpu": "500m", "limits.memory": "128Mi"}),
    )
    .await;
    let big = pods
        .create(
            &PostParams::default(),
            &pod("big", json!({"requests": {"cpu": "600m"}, "limits": {"memory": "1Mi"}})),
        )
        .await
        .expect_err("cpu over quota");
    assert_eq!(
        api_error(big).message,
        "pods \"big\" is forbidden: exceeded quota: compute, requested: requests.cpu=600m, used: requests.cpu=500m, limited: requests.cpu=1"
    );
    pods.create(
        &PostParams::default(),
        &pod("third", json!({"limits": {"cpu": "500m", "memory": "1Mi"}})),
    )
    .await
    .expect("fits again after the delete");

    // Services: a NodePort charges services.nodeports; other kinds count as objects.
    let svc: Service = serde_json::from_value(
        json!({"metadata": {"name": "np"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}}),
    )
    .expect("svc");
    let refused = Api::<Service>::namespaced(client.clone(), "team")
        .create(&PostParams::default(), &svc)
        .await
        .expect_err("no node ports allowed");
    assert_eq!(
        api_error(refused).message,
        "services \"np\" is forbidden: exceeded quota: objects, requested: services.nodeports=1, used: services.nodeports=0, limited: services.nodeports=0"
    );
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }))
    .expect("deployment");
    Api::<Deployment>::namespaced(client.clone(), "team")
        .create(&PostParams::default(), &deploy)
        .await
        .expect("deployment");
    wait_used(
        &client,
        "team",
        "objects",
        json!({"count/deployments.apps": "1", "pods": "2"}),
    )
    .await;
    controller.stop(LIMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_at_the_last_slot_admit_exactly_one() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let controller_client = client.clone();
    let controller = common::Background::start(move |shutdown| resourcequota::run(controller_client, shutdown));
    namespace(&client, "race", json!({})).await;
    quota(&client, "race", "slots", json!({"pods": "2", "configmaps": "3"})).await;
    wait_used(&client, "race", "slots", json!({"pods": "0"})).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "race");
    pods.create(&PostParams::default(), &pod("first", json!({})))
        .await
        .expect("first pod");
    let attempts = 8;
    let results = futures::future::join_all((0..attempts).map(|i| {
        let pods = pods.clone();
        async move {
            pods.create(&PostParams::default(), &pod(&format!("racer-{i}"), json!({})))
                .await
        }
    }))
    .await;
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(admitted, 1, "exactly one create takes the last slot: {results:?}");
    for r in results.into_iter().filter_map(Result::err) {
        let e = api_error(r);
        assert_eq!(e.code, 403, "{e:?}");
        assert!(
            e.message
                .contains("exceeded quota: slots, requested: pods=1, used: pods=2, limited: pods=2"),
            "{e:?}"
        );
    }
    assert_eq!(pods.list(&Default::default()).await.expect("list").items.len(), 2);

    // ConfigMaps too, from kube-rs and kubectl at the same time.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "race");
    let cm = |name: &str| -> ConfigMap { serde_json::from_value(json!({"metadata": {"name": name}})).expect("cm") };
    cms.create(&PostParams::default(), &cm("a")).await.expect("a");
    cms.create(&PostParams::default(), &cm("b")).await.expect("b");
    let cache = server.dir.path().join("race-cache");
    let kubeconfig = server.kubeconfig();
    let kubectl = tokio::task::spawn_blocking(move || {
        common::run_kubectl(33, &kubeconfig, &cache, &["create", "configmap", "k", "-n", "race"])
    });
    let ours = cms.create(&PostParams::default(), &cm("c")).await;
    let (kubectl_ok, _, kubectl_err) = kubectl.await.expect("kubectl");
    assert!(
        ours.is_ok() != kubectl_ok,
        "one of the two creates wins: kube-rs {ours:?}, kubectl {kubectl_err}"
    );
    if !kubectl_ok {
        assert!(
            kubectl_err
                .contains("exceeded quota: slots, requested: configmaps=1, used: configmaps=3, limited: configmaps=3"),
            "{kubectl_err}"
        );
    }
    controller.stop(LIMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dry_runs_are_checked_but_never_charged() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let controller_client = client.clone();
    let controller = common::Background::start(move |shutdown| resourcequota::run(controller_client, shutdown));
    namespace(&client, "dry", json!({})).await;
    quota(&client, "dry", "q", json!({"pods": "1"})).await;
    wait_used(&client, "dry", "q", json!({"pods": "0"})).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "dry");
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    for i in 0..3 {
        pods.create(&dry, &pod(&format!("dry-{i}"), json!({})))
            .await
            .expect("dry run fits");
    }
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), "dry");
    let used = |q: ResourceQuota| serde_json::to_value(q).expect("json")["status"]["used"]["pods"].clone();
    assert_eq!(
        used(quotas.get("q").await.expect("quota")),
        "0",
        "dry runs charge nothing"
    );
    // kubectl's --dry-run=server goes through the same path.
    let cache = server.dir.path().join("dry-cache");
    let (ok, out, err) = common::run_kubectl(
        37,
        &server.kubeconfig(),
        &cache,
        &["run", "kubectl-dry", "-n", "dry", "--image=busybox", "--dry-run=server"],
    );
    assert!(ok, "{out}{err}");
    pods.create(&PostParams::default(), &pod("real", json!({})))
        .await
        .expect("the real one");
    assert_eq!(used(quotas.get("q").await.expect("quota")), "1");
    let refused = pods
        .create(&dry, &pod("dry-over", json!({})))
        .await
        .expect_err("a dry run over quota");
    assert_eq!(
        api_error(refused).message,
        "pods \"dry-over\" is forbidden: exceeded quota: q, requested: pods=1, used: pods=1, limited: pods=1"
    );
    controller.stop(LIMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quotas_validate_and_print_as_upstream() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let controller_client = client.clone();
    let controller = common::Background::start(move |shutdown| resourcequota::run(controller_client, shutdown));
    let bad: ResourceQuota = serde_json::from_value(
        json!({"metadata": {"name": "bad"}, "spec": {"hard": {"pods": "lots", "cpu": "1"}, "scopes": ["BestEffort"]}}),
    )
    .expect("quota");
    let e = api_error(
        Api::<ResourceQuota>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &bad)
            .await
            .expect_err("invalid"),
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert!(
        e.message.contains("spec.hard[pods]: Invalid value: \"lots\""),
        "{}",
        e.message
    );
    assert!(
        e.message
            .contains("spec.scopes: Invalid value: [\"BestEffort\"]: unsupported scope applied to resource"),
        "{}",
        e.message
    );

    let kubeconfig = server.kubeconfig();
    for minor in [33, 37] {
        let cache = server.dir.path().join(format!("cache-{minor}"));
        let ns = format!("print{minor}");
        let run = |args: &[&str]| common::run_kubectl(minor, &kubeconfig, &cache, args);
        let (ok, _, err) = run(&["create", "namespace", &ns]);
        assert!(ok, "{err}");
        let (ok, _, err) = run(&[
            "create",
            "quota",
            "q",
            "-n",
            &ns,
            "--hard=pods=3,requests.cpu=2,limits.memory=1Gi",
        ]);
        assert!(ok, "kubectl 1.{minor} create quota: {err}");
        // Admission charges only quotas whose status the controller has filled in.
        common::wait_for("the quota's first count", LIMIT, || {
            let (ok, out, _) = run(&["get", "quota", "q", "-n", &ns]);
            async move { (ok && out.contains("pods: 0/3")).then_some(()) }
        })
        .await;
        let (ok, out, err) = run(&[
            "run",
            "p",
            "-n",
            &ns,
            "--image=busybox",
            "--overrides",
            r#"{"spec":{"containers":[{"name":"p","image":"busybox","resources":{"requests":{"cpu":"500m"},"limits":{"memory":"256Mi"}}}]}}"#,
        ]);
        assert!(ok, "{out}{err}");
        let table = common::wait_for("the quota's table row", LIMIT, || {
            let (ok, out, _) = run(&["get", "quota", "-n", &ns]);
            let ready =
                ok && out.contains("pods: 1/3, requests.cpu: 500m/2") && out.contains("limits.memory: 256Mi/1Gi");
            async move { ready.then_some(out) }
        })
        .await;
        let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(header, ["NAME", "AGE", "REQUEST", "LIMIT"], "{table}");
        let (ok, out, err) = run(&["describe", "quota", "q", "-n", &ns]);
        assert!(ok && out.contains("requests.cpu") && out.contains("500m"), "{out}{err}");
        let (ok, out, err) = run(&["api-resources", "--api-group="]);
        assert!(
            ok && out
                .lines()
                .any(|l| l.starts_with("resourcequotas") && l.contains("quota")),
            "{out}{err}"
        );
    }
    controller.stop(LIMIT).await;
}

const PRIVILEGED_POD: &str = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "priv"},
  "spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "busybox",
    "securityContext": {"privileged": true}}]}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pod_security_enforces_and_warns_by_namespace_labels() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    namespace(
        &client,
        "locked",
        json!({"pod-security.kubernetes.io/enforce": "restricted"}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "locked");
    let e = api_error(
        pods.create(&PostParams::default(), &pod("x", json!({})))
            .await
            .expect_err("restricted refuses a plain pod"),
    );
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        e.message,
        "pods \"x\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
    );
    let hardened: Pod = serde_json::from_value(json!({
        "metadata": {"name": "ok"},
        "spec": {"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "busybox", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]},
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &hardened)
        .await
        .expect("a restricted pod is admitted");

    let kubeconfig = server.kubeconfig();
    let manifest = server.dir.path().join("priv.json");
    std::fs::write(&manifest, PRIVILEGED_POD).expect("manifest");
    let manifest = manifest.to_string_lossy().into_owned();
    for minor in [33, 37] {
        let cache = server.dir.path().join(format!("pss-cache-{minor}"));
        let ns = format!("pss{minor}");
        let run = |args: &[&str]| common::run_kubectl(minor, &kubeconfig, &cache, args);
        let (ok, _, err) = run(&["create", "namespace", &ns]);
        assert!(ok, "{err}");
        let (ok, _, err) = run(&[
            "label",
            "namespace",
            &ns,
            "pod-security.kubernetes.io/enforce=baseline",
            "pod-security.kubernetes.io/warn=restricted",
            "pod-security.kubernetes.io/warn-version=v1.33",
        ]);
        assert!(ok, "{err}");
        // Enforce: the baseline refusal reaches kubectl's error output.
        let (ok, _, err) = run(&["create", "-n", &ns, "-f", &manifest]);
        assert!(!ok, "a privileged pod is refused");
        assert!(
            err.contains("pods \"priv\" is forbidden: violates PodSecurity \"baseline:latest\": host namespaces (hostNetwork=true), privileged (container \"c\" must not set securityContext.privileged=true)"),
            "kubectl 1.{minor}: {err}"
        );
        // Warn: admitted, with the restricted violations as a Warning kubectl prints.
        let (ok, out, err) = run(&["run", "plain", "-n", &ns, "--image=busybox"]);
        assert!(ok, "{out}{err}");
        assert!(
            err.contains("Warning: would violate PodSecurity \"restricted:v1.33\": allowPrivilegeEscalation != false (container \"plain\" must set securityContext.allowPrivilegeEscalation=false)"),
            "kubectl 1.{minor}: {err}"
        );
        // Workload templates are warned about at the enforce level too, never refused.
        let (ok, out, err) = run(&[
            "create",
            "deployment",
            "hostnet",
            "-n",
            &ns,
            "--image=busybox",
            "--dry-run=client",
            "-o",
            "json",
        ]);
        assert!(ok, "{err}");
        let mut deploy: Value = serde_json::from_str(&out).expect("deployment json");
        deploy["spec"]["template"]["spec"]["hostNetwork"] = json!(true);
        let file = server.dir.path().join(format!("deploy-{minor}.json"));
        std::fs::write(&file, deploy.to_string()).expect("write");
        let (ok, out, err) = run(&["apply", "-n", &ns, "-f", &file.to_string_lossy()]);
        assert!(ok, "{out}{err}");
        assert!(
            err.contains("Warning: would violate PodSecurity \"baseline:latest\": host namespaces (hostNetwork=true)"),
            "kubectl 1.{minor}: {err}"
        );
        // Tightening the enforce level warns about the pods already there.
        let (ok, _, err) = run(&[
            "label",
            "--overwrite",
            "namespace",
            &ns,
            "pod-security.kubernetes.io/enforce=restricted",
        ]);
        assert!(ok, "{err}");
        assert!(
            err.contains(&format!("Warning: existing pods in namespace \"{ns}\" violate the new PodSecurity enforce level \"restricted:latest\""))
                && err.contains("Warning: plain: allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile"),
            "kubectl 1.{minor}: {err}"
        );
        let (ok, _, err) = run(&[
            "label",
            "--overwrite",
            "namespace",
            &ns,
            "pod-security.kubernetes.io/enforce=strict",
        ]);
        assert!(!ok, "an unknown level is refused");
        assert!(
            err.contains("metadata.labels[pod-security.kubernetes.io/enforce]: Unsupported value: \"strict\""),
            "kubectl 1.{minor}: {err}"
        );
    }
}
