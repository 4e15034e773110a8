//! Authentication and authorization as clients see them: 401 without (or with wrong)
//! credentials, 403 naming who and what without permission, RBAC bindings taking effect
//! (and being revoked) at runtime, node identities limited to their own Node and pods,
//! static bearer tokens and ServiceAccount tokens.

mod common;

use std::{
    fmt::Debug,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{ConfigMap, Namespace, Node, Pod, Secret, ServiceAccount},
    rbac::v1::{ClusterRoleBinding, Role, RoleBinding},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use rudder_control::apiserver::pki::Credential;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn from<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

/// The Status of a failed call, which must have this HTTP code.
fn expect_code<T: Debug>(result: Result<T, kube::Error>, code: u16, what: &str) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(s)) if s.code == code => s,
        other => panic!("{what}: expected HTTP {code}, got {other:?}"),
    }
}

/// A 403 whose message names the user, the verb and the resource, as upstream's does.
fn expect_forbidden<T: Debug>(
    result: Result<T, kube::Error>,
    user: &str,
    verb: &str,
    resource: &str,
    what: &str,
) -> String {
    let s = expect_code(result, 403, what);
    assert_eq!(s.reason, "Forbidden", "{what}: {s:?}");
    for want in [
        format!("User \"{user}\""),
        format!("cannot {verb} resource \"{resource}\""),
    ] {
        assert!(
            s.message.contains(&want),
            "{what}: message {:?} lacks {want:?}",
            s.message
        );
    }
    s.message
}

/// Retries `f` until it succeeds or `limit` passes (RBAC is fed by a watch, so a new
/// binding applies within moments, not necessarily at once). Returns the time it took.
async fn within<T: Debug, F, Fut>(limit: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(_) => return start.elapsed(),
            Err(e) if start.elapsed() < limit => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(e) => panic!("{what}: still failing after {limit:?}: {e:?}"),
        }
    }
}

/// Waits until `f` fails with `code` (a revoked permission).
async fn fails_within<T: Debug, F, Fut>(limit: Duration, code: u16, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Err(kube::Error::Api(s)) if s.code == code => return start.elapsed(),
            other if start.elapsed() >= limit => panic!("{what}: expected HTTP {code} within {limit:?}, got {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

fn pod(name: &str, node: Option<&str>) -> Pod {
    let mut p = json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}});
    if let Some(node) = node {
        p["spec"]["nodeName"] = json!(node);
    }
    from(p)
}

#[tokio::test]
async fn no_or_wrong_credentials_get_401_health_and_version_answer() {
    let server = common::TestServer::start().await;
    // A kube-rs client that trusts the CA but presents nothing.
    let mut config = kube::Config::new(server.running.url.parse().expect("url"));
    config.root_cert = Some(vec![server.running.pki.ca_der().to_vec()]);
    let anonymous = Client::try_from(config).expect("client");
    let version = anonymous
        .apiserver_version()
        .await
        .expect("/version answers without credentials");
    let s = expect_code(
        Api::<Pod>::namespaced(anonymous.clone(), "default")
            .list(&ListParams::default())
            .await,
        401,
        "anonymous list pods",
    );
    assert_eq!(s.reason, "Unauthorized");
    expect_code(
        Api::<Node>::all(anonymous.clone()).get("n1").await,
        401,
        "anonymous get node",
    );
    expect_code(anonymous.list_api_groups().await, 401, "anonymous discovery");

    // A bearer token nobody issued is a 401 too, not anonymous, and is not echoed back.
    let secret = "not-a-real-token-5f1d";
    let bad = common::client_from(&server.user_kubeconfig("mallory", Credential::Token(secret.into()))).await;
    let s = expect_code(
        Api::<ConfigMap>::namespaced(bad.clone(), "default")
            .list(&ListParams::default())
            .await,
        401,
        "wrong token",
    );
    assert!(!s.message.contains(secret), "the 401 echoes the token: {s:?}");
    // As upstream: credentials that fail to authenticate are a 401 on every path, even
    // the ones anonymous requests may use.
    expect_code(bad.apiserver_version().await, 401, "/version with a wrong token");

    // curl: /healthz, /livez, /readyz answer 200 without credentials.
    let ca = server.running.pki.ca_path();
    let url = server.running.url.clone();
    let codes = tokio::task::spawn_blocking(move || {
        ["/healthz", "/livez", "/readyz", "/api"].map(|path| {
            let o = std::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
                .arg(&ca)
                .arg(format!("{url}{path}"))
                .output()
                .expect("curl runs (cargo xtask setup installs it)");
            String::from_utf8_lossy(&o.stdout).into_owned()
        })
    })
    .await
    .expect("curl");
    assert_eq!(codes, ["200", "200", "200", "401"]);
    println!(
        "401: anonymous list/get/discovery -> 401 Unauthorized, /version ({}) and /healthz /livez /readyz -> 200; a wrong bearer token -> 401 everywhere (not echoed)",
        version.git_version
    );
    server.running.stop().await;
}

#[tokio::test]
async fn rbac_roles_and_bindings_decide_for_a_certificate_user() {
    let server = common::TestServer::start().await;
    let admin = server.client().await;
    let lp = ListParams::default();
    let alice = server.cert_client("alice", &["devs"]).await;
    Api::<Pod>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &pod("web", None))
        .await
        .expect("admin creates a pod");

    let alice_pods = Api::<Pod>::namespaced(alice.clone(), "default");
    let msg = expect_forbidden(
        alice_pods.list(&ListParams::default()).await,
        "alice",
        "list",
        "pods",
        "alice lists pods before any binding",
    );
    assert!(msg.contains("namespace \"default\""), "{msg}");

    let role: Role = from(json!({
        "metadata": {"name": "pod-reader", "namespace": "default"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
    }));
    Api::<Role>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &role)
        .await
        .expect("create Role");
    let binding: RoleBinding = from(json!({
        "metadata": {"name": "alice-reads-pods", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}],
    }));
    let bindings = Api::<RoleBinding>::namespaced(admin.clone(), "default");
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .expect("create RoleBinding");
    let took = within(Duration::from_secs(2), "alice lists pods after the binding", || {
        alice_pods.list(&lp)
    })
    .await;
    let listed = alice_pods.list(&ListParams::default()).await.expect("list");
    assert_eq!(listed.items.len(), 1);
    alice_pods.get("web").await.expect("alice may get");

    // Only what the Role grants, only where it is bound.
    expect_forbidden(
        alice_pods.delete("web", &DeleteParams::default()).await,
        "alice",
        "delete",
        "pods",
        "alice deletes a pod",
    );
    expect_forbidden(
        alice_pods.create(&PostParams::default(), &pod("mine", None)).await,
        "alice",
        "create",
        "pods",
        "alice creates a pod",
    );
    expect_forbidden(
        alice_pods.watch(&Default::default(), "0").await.map(|_| ()),
        "alice",
        "watch",
        "pods",
        "alice watches pods",
    );
    let msg = expect_forbidden(
        Api::<Pod>::namespaced(alice.clone(), "kube-system")
            .list(&ListParams::default())
            .await,
        "alice",
        "list",
        "pods",
        "alice lists pods in kube-system",
    );
    assert!(msg.contains("namespace \"kube-system\""), "{msg}");
    expect_forbidden(
        Api::<Pod>::all(alice.clone()).list(&ListParams::default()).await,
        "alice",
        "list",
        "pods",
        "alice lists pods cluster-wide",
    );
    expect_forbidden(
        Api::<ConfigMap>::namespaced(alice.clone(), "default")
            .list(&ListParams::default())
            .await,
        "alice",
        "list",
        "configmaps",
        "alice lists configmaps",
    );

    // A ClusterRoleBinding to her group (from the certificate's O) with the `view` role.
    let group_binding: ClusterRoleBinding = from(json!({
        "metadata": {"name": "devs-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "devs"}],
    }));
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &group_binding)
        .await
        .expect("create ClusterRoleBinding");
    let kube_system_cms = Api::<ConfigMap>::namespaced(alice.clone(), "kube-system");
    within(Duration::from_secs(2), "group devs views kube-system", || {
        kube_system_cms.list(&lp)
    })
    .await;
    // As upstream, `view` does not read Secrets (they would grant whatever they hold).
    expect_forbidden(
        Api::<Secret>::namespaced(alice.clone(), "kube-system").list(&lp).await,
        "alice",
        "list",
        "secrets",
        "view reads secrets",
    );
    expect_forbidden(
        kube_system_cms
            .create(&PostParams::default(), &from(json!({"metadata": {"name": "x"}})))
            .await,
        "alice",
        "create",
        "configmaps",
        "view does not create",
    );

    // Revoking: deleting the RoleBinding takes the permission away again... except that
    // `view` (via the group) still lets her list pods, so take that away too.
    bindings
        .delete("alice-reads-pods", &DeleteParams::default())
        .await
        .expect("delete RoleBinding");
    Api::<ClusterRoleBinding>::all(admin.clone())
        .delete("devs-view", &DeleteParams::default())
        .await
        .expect("delete ClusterRoleBinding");
    // A RoleBinding in a namespace covers that Namespace object itself, as upstream's
    // request attributes put /api/v1/namespaces/{name} in namespace {name}.
    let ns_reader: Role = from(json!({
        "metadata": {"name": "ns-reader", "namespace": "kube-public"},
        "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}],
    }));
    Api::<Role>::namespaced(admin.clone(), "kube-public")
        .create(&PostParams::default(), &ns_reader)
        .await
        .expect("create Role");
    let ns_binding: RoleBinding = from(json!({
        "metadata": {"name": "alice-ns", "namespace": "kube-public"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ns-reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}],
    }));
    Api::<RoleBinding>::namespaced(admin.clone(), "kube-public")
        .create(&PostParams::default(), &ns_binding)
        .await
        .expect("create RoleBinding");
    let alice_ns = Api::<Namespace>::all(alice.clone());
    within(Duration::from_secs(2), "alice gets namespace kube-public", || {
        alice_ns.get("kube-public")
    })
    .await;
    expect_forbidden(
        alice_ns.get("default").await,
        "alice",
        "get",
        "namespaces",
        "alice gets namespace default",
    );
    expect_forbidden(
        alice_ns.list(&lp).await,
        "alice",
        "list",
        "namespaces",
        "alice lists namespaces",
    );

    let revoked = fails_within(Duration::from_secs(2), 403, "revoked bindings", || alice_pods.list(&lp)).await;
    println!(
        "RBAC: alice (cert CN=alice O=devs) 403 naming user/verb/resource/namespace; Role+RoleBinding applied in {:?}; \
         still 403 for delete/create/watch, kube-system, cluster-wide, configmaps; Group binding to view works (not secrets); \
         Role in kube-public covers Namespace kube-public only; revoked in {:?}",
        took, revoked
    );
    server.running.stop().await;
}

#[tokio::test]
async fn nodes_may_touch_only_their_own_node_and_pods() {
    let server = common::TestServer::start().await;
    let admin = server.client().await;
    let n1 = server.cert_client("system:node:n1", &["system:nodes"]).await;
    // Same name pattern, but not in system:nodes: no node powers.
    let fake = server.cert_client("system:node:n2", &["devs"]).await;

    let nodes = Api::<Node>::all(admin.clone());
    for name in ["n1", "n2"] {
        nodes
            .create(&PostParams::default(), &from(json!({"metadata": {"name": name}})))
            .await
            .expect("create node");
    }
    let pods = Api::<Pod>::namespaced(admin.clone(), "default");
    pods.create(&PostParams::default(), &pod("p1", Some("n1")))
        .await
        .expect("create p1");
    pods.create(&PostParams::default(), &pod("p2", Some("n2")))
        .await
        .expect("create p2");

    let n1_pods = Api::<Pod>::namespaced(n1.clone(), "default");
    let n1_nodes = Api::<Node>::all(n1.clone());
    let user = "system:node:n1";
    let pp = PatchParams::default();

    // Its own pod's status: patch and replace.
    let running = json!({"status": {"phase": "Running", "podIP": "10.244.1.5"}});
    let patched = n1_pods
        .patch_status("p1", &pp, &Patch::Merge(&running))
        .await
        .expect("n1 patches p1's status");
    assert_eq!(
        patched.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running")
    );
    let mut current = n1_pods.get("p1").await.expect("n1 reads p1");
    current.status.as_mut().expect("status").pod_ip = Some("10.244.1.6".into());
    let replaced = n1_pods
        .replace_status("p1", &PostParams::default(), &current)
        .await
        .expect("n1 replaces p1's status");
    assert_eq!(replaced.status.and_then(|s| s.pod_ip).as_deref(), Some("10.244.1.6"));
    // Its own Node, and that Node's status.
    let labelled = n1_nodes
        .patch("n1", &pp, &Patch::Merge(json!({"metadata": {"labels": {"zone": "a"}}})))
        .await
        .expect("n1 patches Node n1");
    assert_eq!(
        labelled.metadata.labels.and_then(|l| l.get("zone").cloned()).as_deref(),
        Some("a")
    );
    n1_nodes
        .patch_status(
            "n1",
            &pp,
            &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await
        .expect("n1 patches Node n1's status");

    // Everything else: 403 naming the node user.
    let msgs = [
        expect_forbidden(
            n1_pods.patch_status("p2", &pp, &Patch::Merge(&running)).await,
            user,
            "patch",
            "pods",
            "n1 patches p2's status",
        ),
        expect_forbidden(
            n1_pods.delete("p2", &DeleteParams::default()).await,
            user,
            "delete",
            "pods",
            "n1 deletes p2",
        ),
        expect_forbidden(
            n1_nodes
                .patch("n2", &pp, &Patch::Merge(json!({"metadata": {"labels": {"zone": "b"}}})))
                .await,
            user,
            "patch",
            "nodes",
            "n1 patches Node n2",
        ),
        expect_forbidden(
            n1_nodes
                .patch_status("n2", &pp, &Patch::Merge(json!({"status": {"conditions": []}})))
                .await,
            user,
            "patch",
            "nodes",
            "n1 patches Node n2's status",
        ),
        expect_forbidden(
            n1_nodes.delete("n2", &DeleteParams::default()).await,
            user,
            "delete",
            "nodes",
            "n1 deletes Node n2",
        ),
        // Only the status: the spec of its own pod is not the node's to change.
        expect_forbidden(
            n1_pods
                .patch("p1", &pp, &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})))
                .await,
            user,
            "patch",
            "pods",
            "n1 patches p1 itself",
        ),
    ];
    assert!(msgs[0].contains("subresource \"status\""), "{}", msgs[0]);
    // NodeRestriction: a node registers only itself and renews only its own Lease.
    let n3 = n1_nodes
        .create(&PostParams::default(), &from(json!({"metadata": {"name": "n3"}})))
        .await;
    expect_code(n3, 403, "n1 creates Node n3");
    let leases = Api::<Lease>::namespaced(n1.clone(), "kube-node-lease");
    let lease = |name: &str| -> Lease { from(json!({"metadata": {"name": name}, "spec": {"holderIdentity": name}})) };
    leases
        .create(&PostParams::default(), &lease("n1"))
        .await
        .expect("n1 creates its own Lease");
    expect_code(
        leases.create(&PostParams::default(), &lease("n2")).await,
        403,
        "n1 creates n2's Lease",
    );
    leases
        .patch(
            "n1",
            &pp,
            &Patch::Merge(json!({"spec": {"renewTime": "2026-01-01T00:00:00.000000Z"}})),
        )
        .await
        .expect("n1 renews its Lease");
    expect_forbidden(
        Api::<Pod>::namespaced(fake.clone(), "default")
            .list(&ListParams::default())
            .await,
        "system:node:n2",
        "list",
        "pods",
        "a node-like name outside system:nodes",
    );
    // The admin sees p2 untouched.
    let p2 = pods.get("p2").await.expect("p2 still there");
    assert_eq!(p2.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
    // A node may delete a pod bound to it (eviction, static pod cleanup).
    n1_pods
        .delete("p1", &DeleteParams::default())
        .await
        .expect("n1 deletes p1");
    println!(
        "node authz: system:node:n1 patched+replaced p1 status, patched Node n1 and its status, deleted p1; \
         403 for p2 status, p2 delete, Node n2 (patch, status, delete), p1 spec, creating Node n3 or Lease n2; O=devs impostor gets no node powers"
    );
    server.running.stop().await;
}

#[tokio::test]
async fn static_token_file_and_service_account_tokens() {
    let (dir, store) = common::TestServer::embedded_store().await;
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        "# token,user,uid,\"groups\"\n\
         31ada4fd-adec-460c-809a-9e56ceb75269,bob,uid-bob,\"ops,devs\"\n\
         8a1bd9c7-fa0c-4d0b-96a7-c0a3f0e5f1a2,carol,uid-carol\n",
    )
    .expect("write token file");
    let token_path = tokens.clone();
    let server = common::TestServer::start_with_config(dir, store, |c| c.token_auth_file = Some(token_path)).await;
    let admin = server.client().await;
    let lp = ListParams::default();

    let bob = common::client_from(
        &server.user_kubeconfig("bob", Credential::Token("31ada4fd-adec-460c-809a-9e56ceb75269".into())),
    )
    .await;
    let bob_pods = Api::<Pod>::namespaced(bob.clone(), "default");
    // Authenticated (a 403 naming bob, not a 401), but not yet allowed.
    expect_forbidden(
        bob_pods.list(&ListParams::default()).await,
        "bob",
        "list",
        "pods",
        "bob before any binding",
    );
    let ops_view: ClusterRoleBinding = from(json!({
        "metadata": {"name": "ops-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "ops"}],
    }));
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &ops_view)
        .await
        .expect("bind ops");
    let took = within(
        Duration::from_secs(2),
        "bob (group ops from the token file) lists pods",
        || bob_pods.list(&lp),
    )
    .await;
    let carol = common::client_from(&server.user_kubeconfig(
        "carol",
        Credential::Token("8a1bd9c7-fa0c-4d0b-96a7-c0a3f0e5f1a2".into()),
    ))
    .await;
    expect_forbidden(
        Api::<Pod>::namespaced(carol, "default")
            .list(&ListParams::default())
            .await,
        "carol",
        "list",
        "pods",
        "carol is not in ops",
    );
    let wrong = common::client_from(
        &server.user_kubeconfig("bob", Credential::Token("31ada4fd-adec-460c-809a-000000000000".into())),
    )
    .await;
    expect_code(
        Api::<Pod>::namespaced(wrong, "default")
            .list(&ListParams::default())
            .await,
        401,
        "a wrong token",
    );

    // A ServiceAccount token from the TokenRequest API, bound by a ServiceAccount subject.
    let builder_sa: ServiceAccount = from(json!({"metadata": {"name": "builder"}}));
    let sas = Api::<ServiceAccount>::namespaced(admin.clone(), "default");
    sas.create(&PostParams::default(), &builder_sa)
        .await
        .expect("create SA builder");
    let sa_token = sas
        .create_token_request(
            "builder",
            &PostParams::default(),
            &from(json!({"spec": {"audiences": []}})),
        )
        .await
        .expect("TokenRequest")
        .status
        .expect("status")
        .token;
    let builder = common::client_from(&server.user_kubeconfig("builder", Credential::Token(sa_token.clone()))).await;
    let builder_cms = Api::<ConfigMap>::namespaced(builder.clone(), "default");
    expect_forbidden(
        builder_cms.list(&ListParams::default()).await,
        "system:serviceaccount:default:builder",
        "list",
        "configmaps",
        "SA before binding",
    );
    let sa_binding: RoleBinding = from(json!({
        "metadata": {"name": "builder-edit", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"kind": "ServiceAccount", "name": "builder", "namespace": "default"}],
    }));
    Api::<RoleBinding>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &sa_binding)
        .await
        .expect("bind SA");
    let (post, built) = (
        PostParams::default(),
        from::<ConfigMap>(json!({"metadata": {"name": "built"}})),
    );
    within(Duration::from_secs(2), "SA creates a configmap", || {
        builder_cms.create(&post, &built)
    })
    .await;
    expect_forbidden(
        Api::<ConfigMap>::namespaced(builder.clone(), "kube-system")
            .list(&ListParams::default())
            .await,
        "system:serviceaccount:default:builder",
        "list",
        "configmaps",
        "SA outside its binding's namespace",
    );
    let mut tampered = sa_token.clone();
    tampered.pop();
    tampered.push(if sa_token.ends_with('A') { 'B' } else { 'A' });
    let forged = common::client_from(&server.user_kubeconfig("forged", Credential::Token(tampered))).await;
    expect_code(
        Api::<ConfigMap>::namespaced(forged, "default")
            .list(&ListParams::default())
            .await,
        401,
        "a tampered SA token",
    );
    println!(
        "tokens: static token file user bob authenticated (403 naming bob), group ops from the file bound to view in {took:?}; \
         carol 403; wrong token 401; SA token authenticated as system:serviceaccount:default:builder, RoleBinding edit in default only; tampered token 401"
    );
    server.running.stop().await;
}
