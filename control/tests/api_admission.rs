//! The admission chain against a real `rudder server`, with kube-rs and kubectl 1.33 and
//! 1.37: NamespaceLifecycle, ServiceAccount, LimitRanger and DefaultTolerationSeconds each
//! mutate or refuse as upstream's plugins do, dry runs are admitted too, and the flags turn
//! plugins off.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::{LimitRange, Namespace, Pod, ServiceAccount};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use rudder_control::apiserver::resources;
use serde_json::{Value, json};

fn pod(name: &str, spec: Value) -> Pod {
    let mut spec = spec;
    if spec["containers"].is_null() {
        spec["containers"] = json!([{"name": "app", "image": "busybox:1.36"}]);
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("pod")
}

async fn namespace(client: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}})).expect("ns"),
    )
    .await
    .expect("create namespace");
}

/// The refusal a kube-rs call got: (code, reason, message).
fn refusal<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> (u16, String, String) {
    match r {
        Err(kube::Error::Api(e)) => (e.code, e.reason, e.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn wait_for_default_sa(client: &kube::Client, ns: &str) {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    common::wait_for("the default ServiceAccount", Duration::from_secs(30), || {
        let api = api.clone();
        async move { api.get_opt("default").await.ok().flatten().map(|_| ()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_lifecycle_refuses_missing_terminating_and_immortal() {
    let server = common::TestServer::start().await;
    let client = server.client().await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "nope");
    let (code, reason, message) = refusal(pods.create(&PostParams::default(), &pod("p", json!({}))).await);
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    assert_eq!(message, "namespaces \"nope\" not found");

    // A namespace whose content is still being deleted: written as the namespace deletion
    // leaves it, straight into the store, so it stays Terminating for the test.
    let ns_rt = resources::find("", "v1", "namespaces").expect("namespaces");
    let doomed = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "doomed", "uid": "u-doomed", "creationTimestamp": "2026-01-01T00:00:00Z",
                     "deletionTimestamp": "2026-01-01T00:00:01Z"},
        // A finalizer of its own keeps it Terminating after the namespace controller is done.
        "spec": {"finalizers": ["kubernetes", "example.com/hold"]}, "status": {"phase": "Terminating"},
    });
    server
        .running
        .app
        .registry
        .store
        .create(&ns_rt.key(None, "doomed"), serde_json::to_vec(&doomed).expect("json"))
        .await
        .expect("store the terminating namespace");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "doomed");
    let r = pods.create(&PostParams::default(), &pod("late", json!({}))).await;
    let (code, reason, message) = refusal(r);
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        message,
        "pods \"late\" is forbidden: unable to create new content in namespace doomed because it is being terminated"
    );

    let namespaces: Api<Namespace> = Api::all(client.clone());
    for immortal in ["default", "kube-system", "kube-public"] {
        let (code, _, message) = refusal(namespaces.delete(immortal, &DeleteParams::default()).await);
        assert_eq!(code, 403);
        assert_eq!(
            message,
            format!("namespaces \"{immortal}\" is forbidden: this namespace may not be deleted")
        );
    }
    // Others go as before.
    namespace(&client, "mortal").await;
    namespaces
        .delete("mortal", &DeleteParams::default())
        .await
        .expect("delete");

    // What a kubectl user sees.
    let kubeconfig = server.kubeconfig();
    let cache = server.dir.path().join("cache-33");
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        common::run_kubectl(33, &kubeconfig, &cache, &["delete", "namespace", "kube-public"])
    })
    .await
    .expect("kubectl");
    assert!(!ok);
    assert!(
        err.contains(
            "Error from server (Forbidden): namespaces \"kube-public\" is forbidden: this namespace may not be deleted"
        ),
        "{err}"
    );
    server.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_defaults_mounts_and_refuses() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    namespace(&client, "sa").await;
    wait_for_default_sa(&client, "sa").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "sa");

    let created = pods
        .create(
            &PostParams::default(),
            &pod(
                "plain",
                json!({"initContainers": [{"name": "init", "image": "busybox:1.36"}]}),
            ),
        )
        .await
        .expect("create");
    let spec = created.spec.expect("spec");
    assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    let volumes = spec.volumes.unwrap_or_default();
    let access = volumes
        .iter()
        .find(|v| v.name.starts_with("kube-api-access-"))
        .expect("the kube-api-access volume");
    assert_eq!(access.name.len(), "kube-api-access-".len() + 5);
    let projected = access.projected.as_ref().expect("projected");
    assert_eq!(projected.default_mode, Some(420));
    let sources = projected.sources.clone().unwrap_or_default();
    assert_eq!(
        sources[0].service_account_token.as_ref().map(|t| t.path.as_str()),
        Some("token")
    );
    assert_eq!(
        sources[0]
            .service_account_token
            .as_ref()
            .and_then(|t| t.expiration_seconds),
        Some(3607)
    );
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        let mounts = c.volume_mounts.clone().unwrap_or_default();
        let m = mounts
            .iter()
            .find(|m| m.mount_path == "/var/run/secrets/kubernetes.io/serviceaccount")
            .unwrap_or_else(|| panic!("container {} mounts the token", c.name));
        assert_eq!(m.name, access.name);
        assert_eq!(m.read_only, Some(true));
    }

    // Opting out, on the pod or on the ServiceAccount, and a pod's own mount there.
    let opted = pods
        .create(
            &PostParams::default(),
            &pod("opted-out", json!({"automountServiceAccountToken": false})),
        )
        .await
        .expect("create");
    assert!(opted.spec.expect("spec").volumes.unwrap_or_default().is_empty());
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "sa");
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "quiet"}, "automountServiceAccountToken": false,
                                           "imagePullSecrets": [{"name": "registry"}]}),
            )
            .expect("sa"),
        )
        .await
        .expect("create sa");
    let quiet = pods
        .create(
            &PostParams::default(),
            &pod("quiet", json!({"serviceAccountName": "quiet"})),
        )
        .await
        .expect("create");
    let spec = quiet.spec.expect("spec");
    assert!(
        spec.volumes.unwrap_or_default().is_empty(),
        "the ServiceAccount opts out"
    );
    assert_eq!(spec.image_pull_secrets.unwrap_or_default()[0].name, "registry");
    let own = pods
        .create(
            &PostParams::default(),
            &pod("own", json!({
                "containers": [{"name": "app", "image": "busybox:1.36",
                                "volumeMounts": [{"name": "mine", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
                "volumes": [{"name": "mine", "emptyDir": {}}],
            })),
        )
        .await
        .expect("create");
    assert_eq!(own.spec.expect("spec").volumes.unwrap_or_default().len(), 1);

    let (code, reason, message) = refusal(
        pods.create(
            &PostParams::default(),
            &pod("robot", json!({"serviceAccountName": "robot"})),
        )
        .await,
    );
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        message,
        "pods \"robot\" is forbidden: error looking up service account sa/robot: serviceaccount \"robot\" not found"
    );

    // Deleting `default` brings it back (the serviceaccounts controller).
    accounts
        .delete("default", &DeleteParams::default())
        .await
        .expect("delete default");
    wait_for_default_sa(&client, "sa").await;

    let kubeconfig = server.kubeconfig();
    let cache = server.dir.path().join("cache-37");
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        common::run_kubectl(
            37,
            &kubeconfig,
            &cache,
            &[
                "-n",
                "sa",
                "run",
                "kc",
                "--image=busybox:1.36",
                "--overrides",
                r#"{"spec": {"serviceAccountName": "ghost"}}"#,
            ],
        )
    })
    .await
    .expect("kubectl");
    assert!(!ok);
    assert!(
        err.contains("Error from server (Forbidden): pods \"kc\" is forbidden: error looking up service account sa/ghost: serviceaccount \"ghost\" not found"),
        "{err}"
    );
    server.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_toleration_seconds_with_flags() {
    let (dir, store) = common::TestServer::embedded_store().await;
    let server = common::TestServer::start_with_config(dir, store, |c| {
        c.admission.not_ready_toleration = Duration::from_secs(60);
    })
    .await;
    let client = server.client().await;
    wait_for_default_sa(&client, "default").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let created = pods
        .create(&PostParams::default(), &pod("t", json!({})))
        .await
        .expect("create");
    let tolerations = serde_json::to_value(created.spec.expect("spec").tolerations).expect("json");
    assert_eq!(
        tolerations,
        json!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        ])
    );
    let own = pods
        .create(
            &PostParams::default(),
            &pod("own", json!({"tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 7}]})),
        )
        .await
        .expect("create");
    let tolerations = own.spec.expect("spec").tolerations.unwrap_or_default();
    assert_eq!(tolerations.len(), 2);
    assert_eq!(tolerations[0].toleration_seconds, Some(7), "the pod's own stays");
    assert_eq!(tolerations[1].key.as_deref(), Some("node.kubernetes.io/not-ready"));
    server.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_ranger_defaults_and_refuses() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    namespace(&client, "lr").await;
    wait_for_default_sa(&client, "lr").await;
    let ranges: Api<LimitRange> = Api::namespaced(client.clone(), "lr");

    // min above max: 422 naming the field.
    let bad: LimitRange = serde_json::from_value(json!({"metadata": {"name": "bad"}, "spec": {"limits": [
        {"type": "Container", "min": {"cpu": "2"}, "max": {"cpu": "1"}}]}}))
    .expect("lr");
    let (code, reason, message) = refusal(ranges.create(&PostParams::default(), &bad).await);
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(message.contains("spec.limits[0].min[cpu]"), "{message}");

    let range: LimitRange = serde_json::from_value(json!({"metadata": {"name": "limits"}, "spec": {"limits": [
        {"type": "Container", "max": {"cpu": "1"}, "default": {"cpu": "500m", "memory": "128Mi"}, "defaultRequest": {"cpu": "100m"}},
        {"type": "Pod", "max": {"memory": "1Gi"}},
    ]}}))
    .expect("lr");
    let stored = ranges.create(&PostParams::default(), &range).await.expect("create");
    let item = serde_json::to_value(&stored.spec.expect("spec").limits[0]).expect("json");
    assert_eq!(
        item["defaultRequest"],
        json!({"cpu": "100m", "memory": "128Mi"}),
        "defaulted from default"
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), "lr");
    let created = pods
        .create(&PostParams::default(), &pod("bare", json!({})))
        .await
        .expect("create");
    let resources = serde_json::to_value(&created.spec.expect("spec").containers[0].resources).expect("json");
    assert_eq!(
        resources,
        json!({"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}})
    );
    assert_eq!(
        created.metadata.annotations.unwrap_or_default()["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container app; cpu, memory limit for container app"
    );

    let big = pod(
        "big",
        json!({"containers": [{"name": "app", "image": "busybox:1.36", "resources": {"limits": {"cpu": "2"}}}]}),
    );
    let (code, _, message) = refusal(pods.create(&PostParams::default(), &big).await);
    assert_eq!(code, 403);
    assert_eq!(
        message,
        "pods \"big\" is forbidden: maximum cpu usage per Container is 1, but limit is 2"
    );

    let kubeconfig = server.kubeconfig();
    let cache = server.dir.path().join("cache-33");
    let out = tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| common::run_kubectl(33, &kubeconfig, &cache, args);
        (
            run(&["-n", "lr", "run", "heavy", "--image=busybox:1.36", "--overrides",
                  r#"{"spec": {"containers": [{"name": "heavy", "image": "busybox:1.36", "resources": {"limits": {"memory": "2Gi"}}}]}}"#]),
            run(&["-n", "lr", "get", "limits"]),
        )
    })
    .await
    .expect("kubectl");
    let ((ok, _, err), (listed, table, list_err)) = out;
    assert!(!ok);
    assert!(
        err.contains("Error from server (Forbidden): pods \"heavy\" is forbidden: maximum memory usage per Pod is 1Gi, but limit is 2Gi"),
        "{err}"
    );
    assert!(listed, "{list_err}");
    assert!(
        table.starts_with("NAME") && table.contains("CREATED AT") && table.contains("limits"),
        "{table}"
    );
    server.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_is_admitted_and_plugins_can_be_turned_off() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    namespace(&client, "dry").await;
    wait_for_default_sa(&client, "dry").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "dry");
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let tried = pods
        .create(&dry, &pod("tried", json!({})))
        .await
        .expect("dry-run create");
    let spec = tried.spec.expect("spec");
    assert!(spec.volumes.unwrap_or_default()[0].name.starts_with("kube-api-access-"));
    assert_eq!(spec.tolerations.unwrap_or_default().len(), 2);
    assert!(pods.get_opt("tried").await.expect("get").is_none(), "nothing stored");
    let (code, _, message) = refusal(
        pods.create(&dry, &pod("ghost", json!({"serviceAccountName": "ghost"})))
            .await,
    );
    assert_eq!(code, 403);
    assert!(message.contains("serviceaccount \"ghost\" not found"), "{message}");

    let kubeconfig = server.kubeconfig();
    let cache = server.dir.path().join("cache-37");
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        common::run_kubectl(
            37,
            &kubeconfig,
            &cache,
            &["-n", "missing", "run", "x", "--image=busybox:1.36", "--dry-run=server"],
        )
    })
    .await
    .expect("kubectl");
    assert!(!ok);
    assert!(
        err.contains("Error from server (NotFound): namespaces \"missing\" not found"),
        "{err}"
    );
    server.running.stop().await;

    // Without ServiceAccount admission a pod needs no ServiceAccount and gets no token volume.
    let (dir, store) = common::TestServer::embedded_store().await;
    let server = common::TestServer::start_with_config(dir, store, |c| {
        c.admission =
            rudder_control::apiserver::admission::Config::with_flags(&[], &["ServiceAccount".into()]).expect("flags");
    })
    .await;
    let client = server.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let created = pods
        .create(
            &PostParams::default(),
            &pod("free", json!({"serviceAccountName": "nobody"})),
        )
        .await
        .expect("create");
    assert!(created.spec.expect("spec").volumes.unwrap_or_default().is_empty());
    server.running.stop().await;
}
